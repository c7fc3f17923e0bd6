"""Tasks: where examples come from and how completions are scored."""
