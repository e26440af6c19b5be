"""Self-contained HTML pages with inline plots: the base the evaluation and monitoring reports stand on."""
