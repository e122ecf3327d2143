"""PLPHP presets: the paper's (r, delta_r) settings. Use {"plphp": {"preset": "paper_r0.4"}}."""
