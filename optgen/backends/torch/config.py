"""The torch backend's settings."""

NAME = "torch"
TEMPLATE = "optimizer.py.j2"
LINE_LENGTH = 100
