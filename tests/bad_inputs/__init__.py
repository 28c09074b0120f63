"""The bad-input corpus (issue 12): good base inputs and their broken variants (builders.py), and the table
of cases run by tests/test_bad_inputs.py (cases.py)."""
