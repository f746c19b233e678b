"""The app floor: the command line, the demo and what they render (tables, summaries)."""
