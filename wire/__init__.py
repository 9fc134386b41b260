"""What travels between the coordinator and the sites: message records (`protocol`), adapter
encodings (`transport`) and adapter arrays as Flower records (`arrays`). Torch-free."""
