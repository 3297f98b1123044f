"""Data-source Shapley values for fine-tuned language models: the dashboard's entry point.

    streamlit run app.py        (or: make run)
"""

import streamlit as st

from pages.ui import run_sidebar

st.set_page_config(page_title="Source Shapley", page_icon=":material/hub:", layout="wide")

PAGES = [
    st.Page("pages/sources.py", title="Sources", icon=":material/dataset:", default=True),
    st.Page("pages/shapley.py", title="Shapley", icon=":material/bar_chart:"),
]

run_sidebar()
st.navigation(PAGES).run()
