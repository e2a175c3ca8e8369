"""allotment's short import names for users: ``import allotment.pynn as sim``."""
