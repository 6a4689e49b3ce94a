"""Files copied into every release archive's ``example/`` folder.

``run_model.py`` is copied byte for byte (and ``verify`` imports this copy to run the same logic
on the device); ``README.md`` is a ``string.Template`` that ``package`` fills in per model.
"""
