"""Small stand-ins for outside services (GitHub's artifact API, ...), shared by the tests."""
