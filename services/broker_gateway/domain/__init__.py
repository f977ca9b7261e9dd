"""The gateway's pure logic: venue-neutral broker types and the order tracker."""
