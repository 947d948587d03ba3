"""The equipwatch command: wires collectors, rules, the store and the API together."""
