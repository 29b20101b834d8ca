"""Score: every node of a snapshot with the champion model, and what changed since the last scoring."""
