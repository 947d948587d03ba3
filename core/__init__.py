"""What every part of equipwatch shares: record types, the site configuration, the store,
errors and the clock. It imports none of the other packages."""
