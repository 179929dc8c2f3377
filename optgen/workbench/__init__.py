"""The researcher's workbench: build an optimizer for a model (create_optimizer), compare
optimizers on test functions and a small training task (`optgen compare`).

Only factory.py is imported by `import optgen`; the comparison (matplotlib, scikit-learn) is
loaded when `optgen compare` runs.
"""
