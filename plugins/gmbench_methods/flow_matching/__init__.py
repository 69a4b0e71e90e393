"""flow-matching methods: conditional flow matching (arXiv 2210.02747) and rectified flow
(arXiv 2209.03003), sharing the ODE helpers of ``ode``."""
