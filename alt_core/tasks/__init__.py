"""Tasks: the built-in data, models and feedback of a task (today: the demo)."""
