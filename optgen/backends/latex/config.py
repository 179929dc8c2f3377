"""Layout settings of the LaTeX backend."""

RULE_WIDTH = "110mm"  # the algorithm box's rules, as in the torch.optim documentation
INDENT_MM = 5  # per nesting level of the update
CONTINUATION = "13mm"  # indent of a continued input line
ITEMS_PER_LINE = 3
PDFLATEX_TIMEOUT_S = 120
PNG_DPI = 150  # the README picture: sharp on a high-density screen
