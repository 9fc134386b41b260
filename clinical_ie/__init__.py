"""The task: sentence segmentation, instruction format, output parsing, alignment and
strict/lenient scoring for generative clinical entity and relation extraction."""
