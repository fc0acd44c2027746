"""The trainer's pieces: distributed set-up (:mod:`.distributed`), checkpoints
(:mod:`.checkpoint`), the learning-rate schedule (:mod:`.schedule`), progress and logs
(:mod:`.progress`). ``train.py`` reads them top to bottom."""
