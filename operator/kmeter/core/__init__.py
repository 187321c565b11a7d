"""The pure core of kmeter: computation without I/O.

Everything here is a function of its inputs: no sockets, no files, no clocks read behind the
caller's back, no asyncio. Callers (the worker, the usage API, ``kmeter dev``) bring the data
and the current time; the core folds, decides and answers. This is what makes the numbers
customers are billed by testable against a plain oracle with hypothesis.
"""
