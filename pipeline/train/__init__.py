"""Training (issue 3), no Ray: `config` (TrainConfig), `data` (labelled records, split, augmentation),
`loop` (the worker loop: mole / linear, calibration, checkpoint), `linear` (scikit-learn heads), `masking`
(texture-aware patch masking, MPFT reading), `calibrate` (FPR and unknown-generator thresholds).
`pipeline.engine.train` runs the loop under Ray Train."""
