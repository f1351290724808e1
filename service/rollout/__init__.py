"""Rollouts without a process: ``policy.py`` (the record, the exact test and the decision rule) and
``records.py`` (the record read and written through the model store). Shared by the serving core
(``service/core/rollout.py``), the controller (``service/controller.py``) and the trainer."""
