"""The training system: what `pip install '.[train]'` adds (TensorFlow, ml_collections).

`config` (the schema of a training config), `train_lib` (train state, jitted steps, the
loop), `clock`, `tasks` (each task's data and evaluation hooks), `sources` and
`input_pipeline` (tf.data), `vocabulary` (SentencePiece training, in-graph tokenisation),
`loss`, `metrics`, `synthetic`, `distributed`. The library outside this package never
imports it; the train step and the loss import without TensorFlow or ml_collections.
"""
