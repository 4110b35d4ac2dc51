"""The real-footage demo: an alternating-exposure sequence from an ordinary video, and the
no-reference before/after comparison of adaptation (results/ holds the committed figures)."""
