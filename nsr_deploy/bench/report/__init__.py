"""The bench's report: the JSON document, terminal tables, the headline summary, the plot."""
