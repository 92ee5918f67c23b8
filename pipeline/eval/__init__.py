"""Evaluation (issue 3), no Ray: `metrics` (AP/AUC via scikit-learn, accuracies, attribution), `evaluate`
(UnivFD-format per-generator table, robustness sweeps, attribution), `report` (Markdown), `plots` (PNG)."""
