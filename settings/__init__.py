"""The run configuration (every key, typed, validated once) and logging setup, shared by
both apps, the command line and the benchmarks."""
