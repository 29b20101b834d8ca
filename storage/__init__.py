"""The only code that knows file names, formats and the store's layout."""
