"""One module per API surface (wire format) the gateway speaks: what its requests, answers,
stream events and errors look like."""
