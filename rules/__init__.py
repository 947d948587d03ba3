"""The rules: maintenance plans (plans.py and its parts), and the engine (engine.py) that turns
them, with device faults, into due occurrences, work orders, alarms and notifications (notify/)."""
