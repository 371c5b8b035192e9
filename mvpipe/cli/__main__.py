"""`python -m mvpipe.cli`."""

from mvpipe.cli import main

main(prog_name="mvpipe")
