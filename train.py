"""Train a Transformer: `python train.py --config=configs/demo.py --workdir=/tmp/demo`."""

from transformer_jax.cli.train import run

if __name__ == '__main__':
  run()
