"""sparserl: sparse deep reinforcement learning in JAX (docs/design.md).

Importing the package defers what our dependencies import at module level but our runs never use
(`sparserl.deferred_imports`, docs/design.md section 7): distrax (rlax's distribution helpers; it pulls
tensorflow_probability) and matplotlib.pyplot and seaborn (gymnax's renderers; they pull pandas and scipy.stats).
Each is imported for real when one of its attributes is first used. rlax's policy_targets names distrax in its
annotations only: it is compiled with postponed annotations, so importing rlax does not read distrax.
"""

from sparserl import deferred_imports

deferred_imports.defer(("distrax", "matplotlib.pyplot", "seaborn"))
deferred_imports.postpone_annotations(("rlax._src.policy_targets",))
