"""Mixture-weight search over document groups with small proxy LMs.

    simplex   mixture weights: parametrisations for a search, integer shares of a budget
    trials    one trial: training sequences cut by the mixture, a fresh proxy, its losses
    tune      the Ray Tune search (mode tune) and what every search runs on Tune
    regmix    RegMix: regression of the loss on the weights (mode regmix)

The pool side: distsel.methods.mixture.sampling reads the groups part by part (their sizes, the
search's samples, the selection by the weights); distsel.methods.mixture.selector makes the
group token streams and is the entry point.
"""
