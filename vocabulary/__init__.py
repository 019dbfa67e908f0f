"""What every layer shares and may import, the explainer included: the names of regions, methods,
target kinds, flag scopes and rules (`names`), regions over an image's grid (`regions`) and summaries
of one relevance map (`map_stats`), and the defaults several layers share (`defaults`). Numpy only: no torch, no storage, no Prefect."""
