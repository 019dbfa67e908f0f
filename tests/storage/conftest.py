"""The S3 server and DICOM fixtures live in tests/s3_fixtures.py (shared through tests/conftest.py)."""
