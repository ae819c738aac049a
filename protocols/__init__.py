"""MPC protocols: plain functions ``op(ctx, shares, ...) -> shares``.

Each protocol family is a share type plus one object implementing ``protocols.family.ProtocolFamily``
(``protocols.families`` lists them).  This
package depends on the ``mpc`` core (ring, fixed point, prg, context) and never
on ``parties``.
"""
