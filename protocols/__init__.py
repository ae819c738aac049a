"""MPC protocols: plain functions ``op(ctx, shares, ...) -> shares``.

Each protocol family is one strategy object in ``protocols.suites``.  This
package depends on the ``mpc`` core (ring, fixed point, prg, context) and never
on ``parties``.
"""
