"""One class per dataset, with a uniform interface and clear errors when files are missing."""
