"""The paper broker's pure logic: the fill model and the books."""
