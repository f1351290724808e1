"""Client feedback kept for retraining: ``log.py`` is the log format the trainer reads too (records, ids,
label folders), ``store.py`` the durable store the service writes through. The feedback *call* (a label
checked, classified, stored) is the core's (``service/core/feedback.py``)."""
