"""Generated protocol modules."""
