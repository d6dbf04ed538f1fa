"""Workflows: several stages chained for one purpose — `compare` trains models side by side, `demo` runs the whole
chain on the bundled samples. They only call the stages below; the CLI calls them."""
