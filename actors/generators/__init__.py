"""Seeded puzzle generators: countdown (``countdown.py``) and sudoku with a unique solution, split
by solution grid (``sudoku.py``). Turned into task examples by ``actors.tasks``."""
