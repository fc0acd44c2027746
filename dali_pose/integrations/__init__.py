"""Glue for other people's trainers: :mod:`.gather` (validation predictions of every rank
to rank 0, each once) and :mod:`.lightning` (PyTorch Lightning, the optional extra
``pip install -e ".[lightning]"``). Importing this package imports neither Lightning nor
DALI."""
