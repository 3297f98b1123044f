"""Data-source Shapley values for fine-tuned language models: the dashboard's entry point.

    streamlit run app.py        (or: make run)

Every page file starts with `through_app()`: a page that Streamlit runs without this file (its legacy
pages/ path, before this file has reached st.navigation once in the server process) runs this file
instead, in the same script run. `run_page` marks the pages this file runs.
"""

import streamlit as st

from pages.ui import run_page, run_sidebar

st.set_page_config(page_title="Source Shapley", page_icon=":material/hub:", layout="wide")

PAGES = [
    st.Page("pages/sources.py", title="Sources", icon=":material/dataset:", default=True),
    st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
    st.Page("pages/playground.py", title="Playground", icon=":material/play_arrow:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("pages/shapley.py", title="Shapley", icon=":material/bar_chart:"),
    st.Page("pages/validate.py", title="Validate", icon=":material/verified:"),
    st.Page("pages/learn.py", title="Learn", icon=":material/school:"),
]

# Navigation first, then the sidebar: widgets made after st.navigation keep their state from the
# very first run (with a pages/ folder, Streamlit's first run otherwise takes its legacy path).
page = st.navigation(PAGES)
run_sidebar()
run_page(page)
