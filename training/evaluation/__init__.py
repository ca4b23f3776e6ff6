"""CLIR evaluation: encoding and dense retrieval (:mod:`.evaluate`), the ranked-retrieval metrics
(:mod:`.metrics`), mean-pooled and MaxSim scoring (:mod:`.scoring`), clean-vs-perturbed queries
(:mod:`.robustness`), and summaries and tables with the high/low-resource gap (:mod:`.report`).
"""
