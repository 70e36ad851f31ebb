"""purify's inference server: the Open Inference Protocol (v2) over a defended classifier.

The server itself is tracked in issue 5; this package is where it lives, and it imports
``purify``, never the other way round.
"""
