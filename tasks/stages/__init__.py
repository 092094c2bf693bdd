"""One module per stage: a plain function per unit plus its planner, registered in tasks/registry.py."""
