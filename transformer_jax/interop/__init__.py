"""Conversion to and from other toolkits' formats (`marian`: OPUS-MT / Transformers'
MarianMTModel in, Transformers and CTranslate2 out). Not needed to train or translate."""
