"""Studies: task x algorithms x seeds x budget, and the aggregation of their results (see ``aggregate``)."""
