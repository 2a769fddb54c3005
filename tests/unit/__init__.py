"""Unit tests: pure code only (model, planning, naming). No root, no services, no mocks of
libraries; they run anywhere in seconds with `pytest tests/unit`."""
