"""The trainer's pieces: distributed set-up (:mod:`.distributed`), the training checkpoint
(:mod:`.checkpoint`), one run per out_dir (:mod:`.outdir`), stopping on a signal or a NaN
loss (:mod:`.stopping`), the optimiser and learning-rate schedule (:mod:`.schedule`),
progress and logs (:mod:`.progress`). ``train.py`` reads them top to bottom."""
